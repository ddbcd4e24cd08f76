"""mia_bench: how much does a trained model leak about its training records, and what does a defense cost?"""

__version__ = "0.1.0"
