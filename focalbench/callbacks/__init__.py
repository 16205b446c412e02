"""Lightning callbacks: TensorBoard pictures and prediction writers."""
