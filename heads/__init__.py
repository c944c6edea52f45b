"""Features -> labels: classifier heads trained on a feature store (see DESIGN.md).

Empty for now: the heads arrive with `headstart train`.
"""
