"""A development model server that speaks TF Serving's gRPC and REST APIs (see
:mod:`.model_server`): :mod:`.status` (its codes), :mod:`.limits`, :mod:`.versions` (the
versions on disk), :mod:`.core` (one prediction), :mod:`.grpc_api`, :mod:`.rest_json` (the
REST JSON codec) and :mod:`.rest_http` (the REST transport)."""
from cnnrnn_tf.serving.server.limits import ServerLimits  # noqa: F401
from cnnrnn_tf.serving.server.model_server import ModelServer  # noqa: F401
from cnnrnn_tf.serving.server.status import RequestError  # noqa: F401
from cnnrnn_tf.serving.server.versions import ModelManager  # noqa: F401
