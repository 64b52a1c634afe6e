"""The core: the P3D building blocks (`layers`), input normalisation (`normalization`), and the
small helpers every layer above shares (`checks`, `files`, `labels`, `protowire`, `output_folder`: a
folder one run writes at a time)."""
