"""Weight files: the presets' cache and downloads (`cache`), original checkpoints read without
their frameworks (`pth`: torch `.pth` / `.npz`, `caffemodel`), the limits on what such a file may
declare (`untrusted`), and the Keras <-> original name mapping that loads them (`original`)."""
