"""Lightning data modules; each exposes ``num_classes`` and yields (inputs, target) batches."""
