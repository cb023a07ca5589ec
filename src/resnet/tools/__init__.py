"""The tools around a model: eval, predict, calibrate, export and int8, explain, the app, check,
bench and summary."""
