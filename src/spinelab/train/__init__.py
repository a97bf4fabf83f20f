"""Task-agnostic training: a ``Stage`` says what to learn, ``SpineModule`` and ``train_stage`` do the rest."""
