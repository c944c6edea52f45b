"""Full CNNs (`headstart train-cnn`): images -> a network trained on their pixels, not on
features. `model` builds the Keras models, `data` decodes the folder into tf.data
pipelines, `training` trains, saves and reports (MODEL_DIR)."""
