"""The kinds of head `train --head` offers, in a light module: the CLI reads them without
loading scikit-learn, Keras or numpy."""

SKLEARN_KINDS = ("logreg", "svm", "knn", "rf")
MLP_KINDS = ("mlp",)
HEAD_KINDS = SKLEARN_KINDS + MLP_KINDS
CLASS_WEIGHTED_KINDS = ("logreg", "svm", "rf", "mlp")  # --class-weight balanced
