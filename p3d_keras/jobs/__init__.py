"""The jobs, callable from a script with keyword arguments: `training.train`,
`evaluation.evaluate`, `features.extract_features`, `export.export_saved_model` (a model) and
`export.export_model` (a spec), `predict.predict_video`, `original_weights.save_as_keras_weights`,
`demo.run_demo`; `models.ModelSpec` says which network a job runs."""
