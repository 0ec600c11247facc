"""The operator's side of lambdahat: the commands that run and administer a deployment (``ops/cli.py``)."""
