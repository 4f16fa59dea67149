"""KFP pipelines of nasflow."""
