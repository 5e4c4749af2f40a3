"""The channel core both channels compose: glue, picking, health, outlier, status."""
