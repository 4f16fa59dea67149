"""What each pipeline step does, from plain paths and values to files and MLflow records.

A KFP component calls exactly one of these functions; so do the tests, without KFP.
Every user-caused failure surfaces as one ``nasflow: ...`` line on stderr (and in
``NASFLOW_ERROR_FILE`` when the local runner set one) and a non-zero exit.
"""
