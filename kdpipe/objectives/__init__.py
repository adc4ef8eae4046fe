"""Building blocks of the entry points beyond ``kd``: CRD, FT, BSS (losses, memories, attacks)."""
