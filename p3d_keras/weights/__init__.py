"""Weight files: the presets' cache and downloads (`cache`); original checkpoints read without
their frameworks (`formats`: which format a file is and `read_state_dict`; `pth`: torch `.pth` /
`.pth.tar`; `npz`; `caffemodel`), the pickle scan that runs before any unpickling (`pickle_scan`),
the limits on what such a file may declare (`untrusted`), and the Keras <-> original name mapping
that loads them (`original`)."""
