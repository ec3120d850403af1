"""California housing price pipeline: the MLflow Project's steps.

load_data → preprocess → train → register, chained by main.
"""
