"""Analyses behind the paper's figures: read weights (Fig. 1, :mod:`.read_weights`) and loss maps
of synthesised clips (Fig. 7, :mod:`.loss_maps`)."""
