"""Training: the loop (:mod:`.loop`), its input plan, devices and callbacks, and fine-tuning.

The package face keeps the names outside scripts use: ``train``, ``choose_strategy``,
``TrainResult`` (``.model .vocab .config .info .history .metrics``) and the helpers of the loop.
"""
from cnnrnn_tf.training.callbacks import BACKUP_DIR, LOG_DIR  # noqa: F401
from cnnrnn_tf.training.devices import choose_strategy  # noqa: F401
from cnnrnn_tf.training.loop import TrainResult, make_loss, make_optimizer, train  # noqa: F401
from cnnrnn_tf.training.plan import CACHE_DIR, TrainPlan, plan_training  # noqa: F401
from cnnrnn_tf.training.splits import check_splits_apart, split_names  # noqa: F401
