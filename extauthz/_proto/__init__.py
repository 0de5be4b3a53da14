# Generated code. DO NOT EDIT.
# Generated from protos/ by `python scripts/gen_protos.py`; re-run it after changing the .proto files.
