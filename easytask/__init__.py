"""EasyTask: run commands on many hosts and keep an exact record of everything that ran."""

__version__ = "0.1.0"
