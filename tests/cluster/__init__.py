"""Against a real cluster (KUBECONFIG set); skipped everywhere else."""
