"""Training the models the system ships (see ``training.foundation``)."""
