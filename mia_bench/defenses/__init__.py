"""Defenses, one module per family: LightningModule subclasses when the loss or step changes, callbacks when they
act between steps or epochs, predictors when they act at inference. Each is selected by a
``conf/defense/<name>.yaml`` that composes these parts."""
