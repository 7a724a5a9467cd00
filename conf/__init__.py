# Makes the configs importable as `reprlab.conf` so Hydra finds them in an installed wheel too.
