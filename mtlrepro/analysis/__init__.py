"""Analyses of trained models beyond their metrics, read from a finished run's files.

* :mod:`mtlrepro.analysis.flatness` measures the sharpness of the minimum a run reached (RW Sec. 5.1,
  Figure 1): the largest Hessian eigenvalue of the training loss and the gradient variance over minibatches.
"""
