raise ValueError("MeshService 'x': retry_attempts must be between 1 and 100, got 0")
