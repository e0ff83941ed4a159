"""Names of the regularization mechanisms a preset may give rates to (tasks/nn/regularizers.py says
what each does). Kept free of torch: `bench list` and the preset loader read them."""

ZAREMBA = "zaremba"  # the paper: `dropout` alone, the default regularizer of every preset
MECHANISMS = ("dropout", "locked", "hidden", "weight_drop", "embedding", "zoneout_c", "zoneout_h", "recurrent")
FLAGS = ("per_gate",)  # switches, not rates
