"""Training: the loop (:mod:`.loop`), its input plan, devices and callbacks, and fine-tuning.

The package face keeps the names outside scripts use: ``train``, ``choose_strategy``,
``TrainResult`` (``.model .vocab .config .info .history .metrics``) and the helpers of the loop.
"""
from cnnrnn_tf.training.loop import (  # noqa: F401
    BACKUP_DIR,
    CACHE_DIR,
    LOG_DIR,
    TrainPlan,
    TrainResult,
    check_splits_apart,
    choose_strategy,
    make_loss,
    make_optimizer,
    plan_training,
    split_names,
    train,
)
