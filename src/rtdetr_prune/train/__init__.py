"""Training support shared by every model family: sparse training's penalty, schedule and log
(``sparsity``). The trainers themselves live with their family (``models/<family>/``)."""
