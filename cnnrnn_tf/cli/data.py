"""``cnnrnn data``: build the default data set, split a train folder, convert CSV / COCO / VOC."""
from __future__ import annotations

import sys

from cnnrnn_tf.cli.args import Parser, label_sep, non_negative_int, positive_int, probability
from cnnrnn_tf.errors import InputError


def cmd_data_fashion(args) -> int:
    from cnnrnn_tf.data import build_fashion_outfits

    summary = build_fashion_outfits(args.out, num_train=args.train, num_test=args.test,
                                    num_val=args.val, seed=args.seed, grammar=args.grammar,
                                    source_dir=args.source, image_size=args.image_size)
    for split in ("train", "val", "test"):
        print(summary[split])
    return 0


def cmd_data_split(args) -> int:
    import logging

    from cnnrnn_tf.data import split_train_val

    # The split's warning (a training label without val examples) as one "warning: ..." line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("cnnrnn_tf.data.split")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        summary = split_train_val(args.data, args.out, args.val_fraction, seed=args.seed)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    for side in ("train", "val"):
        print(summary[side])
    return 0


def _writing_options(args) -> dict:
    """The converters' keyword arguments for how they write (see add_writing_flags)."""
    if args.beam:
        from cnnrnn_tf.data.beam_writer import quiet_beam_logging

        quiet_beam_logging()
    elif args.beam_arg:
        raise InputError("--beam-arg: only with --beam")
    return dict(on_bad_image=args.on_bad_image, beam=args.beam, beam_args=args.beam_arg,
                direct_num_workers=args.direct_num_workers,
                progress=not args.quiet and sys.stdout.isatty())


def cmd_data_csv(args) -> int:
    from cnnrnn_tf.data import convert_csv

    print(convert_csv(args.csv, args.out, label_sep=args.label_sep, **_writing_options(args)))
    return 0


def cmd_data_coco(args) -> int:
    from cnnrnn_tf.data import convert_coco

    print(convert_coco(args.annotations, args.images, args.out,
                       skip_empty=not args.keep_empty, **_writing_options(args)))
    return 0


def cmd_data_voc(args) -> int:
    from cnnrnn_tf.data import convert_voc

    print(convert_voc(args.root, args.split, args.out, include_difficult=args.difficult,
                      **_writing_options(args)))
    return 0


def add_writing_flags(p) -> None:
    """How the converters (from-csv, from-coco, from-voc) read the images and write shards."""
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="a missing, unreadable or corrupt image file: 'fail' (default) stops "
                        "with an error naming it; 'skip' leaves it out and lists it in "
                        "OUT/skipped.csv")
    p.add_argument("--beam", action="store_true",
                   help="read and write the images with an Apache Beam pipeline (local "
                        "DirectRunner with worker processes unless --beam-arg says otherwise)")
    p.add_argument("--direct-num-workers", type=positive_int, default=2, metavar="N",
                   help="--beam on the local DirectRunner: worker processes (default 2)")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument, repeatable, e.g. "
                        "--beam-arg=--runner=DataflowRunner")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    data = sub.add_parser("data", help="build or convert data sets to TFRecord shards")
    dsub = data.add_subparsers(dest="data_command", metavar="SOURCE", parser_class=Parser)
    dsub.required = True
    p = dsub.add_parser("fashion-outfits", help="the built-in default data set")
    p.add_argument("--out", required=True, help="writes OUT/train, OUT/val and OUT/test")
    p.add_argument("--train", type=positive_int, default=10000,
                   help="train scenes (from Fashion-MNIST train images 0..49,999)")
    p.add_argument("--val", type=positive_int, default=None,
                   help="val scenes (from Fashion-MNIST train images 50,000..59,999, which no "
                        "train scene uses; default: the --test size)")
    p.add_argument("--test", type=positive_int, default=2000,
                   help="test scenes (from Fashion-MNIST test images)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed: the same seed writes the same shards")
    p.add_argument("--grammar", choices=("outfits", "independent"), default="outfits",
                   help="'independent': the control variant without label dependencies")
    p.add_argument("--image-size", type=positive_int, default=64,
                   help="scene width and height in pixels (even, >= 56)")
    p.add_argument("--source", default=None, help="folder with Fashion-MNIST IDX files")
    p.set_defaults(func=cmd_data_fashion)
    p = dsub.add_parser(
        "split", help="carve a val split out of a train folder (by a hash)",
        description="Writes OUT/train and OUT/val from the records of --data, copied byte for "
                    "byte. A record goes to val when sha256(seed + image/id, or its bytes "
                    "without an id) falls below the fraction: the same data and seed always "
                    "give the same split.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="data folder of *.tfrecord.gz shards to split")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes OUT/train and OUT/val (refused when they hold shards)")
    p.add_argument("--val-fraction", type=probability, required=True, metavar="F",
                   help="expected fraction of records in val, between 0 and 1 (exclusive)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                   help="salt of the hash: the same data and seed give the same split")
    p.set_defaults(func=cmd_data_split, local_inputs=(("data", "data folder"),))
    p = dsub.add_parser("from-csv", help="CSV with columns image,labels")
    p.add_argument("--csv", required=True, help="CSV file with the columns image,labels")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--label-sep", type=label_sep, default="|",
                   help="separator between the labels of one image (default |)")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_csv, local_inputs=(("csv", "CSV file"),))
    p = dsub.add_parser("from-coco", help="MS-COCO instances JSON + image folder")
    p.add_argument("--annotations", required=True, help="COCO instances JSON file")
    p.add_argument("--images", required=True, help="folder of the images the JSON names")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--keep-empty", action="store_true",
                   help="keep images without annotations (they get no labels)")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_coco, local_inputs=(("annotations", "annotation file"), ("images", "image folder")))
    p = dsub.add_parser("from-voc", help="Pascal VOC folder")
    p.add_argument("--root", required=True, help="VOC root (holds Annotations/, JPEGImages/, ImageSets/)")
    p.add_argument("--split", required=True,
                   help="image set under ImageSets/Main (e.g. train, val, trainval, test)")
    p.add_argument("--out", required=True, help="output folder (local, s3:// or gs://)")
    p.add_argument("--difficult", action="store_true", help="include 'difficult' objects")
    add_writing_flags(p)
    p.set_defaults(func=cmd_data_voc, local_inputs=(("root", "VOC root folder"),))
