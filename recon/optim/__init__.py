"""Small iterative solvers shared by calibration, QSM and the methods: conjugate gradient, power iteration."""
