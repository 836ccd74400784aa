"""Flat Lambda-CDM distances (H0 = 70 km/s/Mpc, Omega_m = 0.3), written out so the simulator
needs no astropy. Distances come from one cumulative trapezoid integral of 1/E(z) on a fine
grid and linear interpolation, which is accurate to ~1e-6 for z < 3."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

H0_KM_S_MPC = 70.0
OMEGA_M = 0.3
SPEED_OF_LIGHT_KM_S = 299792.458
HUBBLE_DISTANCE_MPC = SPEED_OF_LIGHT_KM_S / H0_KM_S_MPC
ARCSEC_PER_RADIAN = 180.0 / np.pi * 3600.0
_Z_MAX = 3.0


def hubble_rate(z):
    """E(z) = H(z)/H0 for flat LCDM (radiation neglected)."""
    z = np.asarray(z, dtype=np.float64)
    return np.sqrt(OMEGA_M * (1.0 + z) ** 3 + (1.0 - OMEGA_M))


@lru_cache(maxsize=1)
def _comoving_table():
    z = np.linspace(0.0, _Z_MAX, 30001)
    inverse_e = 1.0 / hubble_rate(z)
    steps = 0.5 * (inverse_e[1:] + inverse_e[:-1]) * np.diff(z)
    return z, HUBBLE_DISTANCE_MPC * np.concatenate([[0.0], np.cumsum(steps)])


def comoving_distance_mpc(z):
    """Line-of-sight comoving distance D_C = D_H * int_0^z dz'/E(z')."""
    z = np.asarray(z, dtype=np.float64)
    if np.any(z < 0) or np.any(z > _Z_MAX):
        raise ValueError(f"redshift outside 0..{_Z_MAX}")
    grid_z, grid_dc = _comoving_table()
    return np.interp(z, grid_z, grid_dc)


def angular_diameter_distance_mpc(z):
    """D_A = D_C / (1+z) in a flat universe."""
    return comoving_distance_mpc(z) / (1.0 + np.asarray(z, dtype=np.float64))


def luminosity_distance_mpc(z):
    """D_L = (1+z) D_C in a flat universe."""
    return comoving_distance_mpc(z) * (1.0 + np.asarray(z, dtype=np.float64))


def distance_modulus(z):
    """5 log10(D_L / 10 pc)."""
    return 5.0 * np.log10(luminosity_distance_mpc(z) * 1e5)


def kpc_to_arcsec(size_kpc, z):
    """Angle subtended by a proper length at redshift z."""
    return np.asarray(size_kpc) / (angular_diameter_distance_mpc(z) * 1e3) * ARCSEC_PER_RADIAN


def comoving_volume_density(z):
    """dV_C/dz/dOmega up to a constant: D_C^2 / E(z); the redshift prior of a uniform population."""
    return comoving_distance_mpc(z) ** 2 / hubble_rate(z)
