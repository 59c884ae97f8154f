"""The trt-* commands (trt-export, trt-build, trt-calib, trt-infer, trt-eval, trt-bench, trt-inspect,
trt-serve): thin shells over the Python API. Takes command lines; gives the API's results as
files, JSON reports and one-line errors (exit 2 for usage, 1 for the environment). May import:
every layer, being the top (calib/, bench/, serve/, importers/ and what they stand on).
"""
