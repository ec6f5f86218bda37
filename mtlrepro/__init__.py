"""mtlrepro: reproduce the Random Weighting and ExcessMTL multi-task learning papers."""

__version__ = "0.1.0"
