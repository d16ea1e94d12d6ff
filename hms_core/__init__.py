"""hms: harmful brain activity classification on the HMS EEG data set."""
__version__ = "0.1.0"
