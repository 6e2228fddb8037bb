from cnnrnn_tf.cli.app import run

run()
