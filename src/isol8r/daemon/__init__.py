"""The daemon layer: isol8r's long-lived processes (the fork server, the CLI's server, the warm
pool). It depends one way on the jail layer (spec, supervisor, pipeline, protocol) and never on
the front ends (cli.py, the library's __init__): a front end that starts a daemon hands it the
callables it wants run."""
