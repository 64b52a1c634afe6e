"""The jobs, callable from a script with keyword arguments: `training.train`,
`evaluation.evaluate`, `features.extract_features`, `export.export_saved_model`,
`predict.predict_file`, `demo.run_demo`; `models.ModelSpec` says which network a job runs."""
