"""Full CNNs (`headstart train-cnn`): images -> a network trained on their pixels, not on
features. `settings` holds and checks what a run asks for, `model` builds the Keras models,
`data` decodes the folder into tf.data pipelines, `work_folder` keeps a run resumable, and
`training` trains, saves and reports (MODEL_DIR)."""
