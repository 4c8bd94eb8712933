"""THE parallel plan (a table by weight name) and the layers it swaps into a built model: the
model-parallel linear and embedding layers, and their int8 and int4 forms."""
