"""Every closed set of values the project accepts, in one place and with no imports, so that
``cnnrnn --help`` and the argument checks answer without loading TensorFlow, and the model
code can name a choice without knowing the command line."""

MODELS = ("cnn-rnn", "bce", "asl")
BACKBONES = ("small-cnn", "vgg16", "resnet50", "efficientnet-lite0")
OPTIMIZERS = ("rmsprop", "adam")
LABEL_HEADS = ("none", "aux", "evidence")
DECODERS = ("global", "attention")
MONITORS = ("val_f1", "val_map", "val_loss")
LR_SCHEDULES = ("cosine", "constant")
JIT_COMPILE = ("auto", "on", "off")
CACHE_MODES = ("auto", "memory", "disk", "none")
THRESHOLD_METRICS = ("OF1", "CF1")
# The order of an image's labels on the training path: fixed by label frequency in the
# training set (frequent-first is the paper's), random per batch, or aligned to the model's
# own predictions (PLA / MLA, cnnrnn_tf.models.label_alignment).
LABEL_ORDERS = ("frequent-first", "rare-first", "random", "pla", "mla")
# The pipeline's step names (node ids) that `pipeline compile --resources` accepts; the
# compiled pipeline is the authority: a name that is not one of its steps is refused.
PIPELINE_STEPS = ("ImportExampleGen", "StatisticsGen", "CuratedSchemaGen", "ImportSchemaGen",
                  "ExampleValidator", "AnomalyGate", "Transform", "Tuner", "Trainer",
                  "Evaluator", "TestEvaluator", "InfraValidator", "Pusher")
PIPELINE_PLATFORMS = ("kfp", "vertex")
