"""The jobs, callable from a script with keyword arguments: `training.train`,
`evaluation.evaluate`, `features.extract_features`, `export.export_saved_model` (a model) and
`export.export_model` (a spec), `predict.predict_video`, `original_weights.save_as_keras_weights`,
`demo.run_demo`, `fusion.fuse_folders` (late fusion of evaluations), `transfer.transfer` (a linear SVM
on features); `models.ModelSpec` says which network a job runs."""
