"""The real series of the accuracy benchmark, read from data files shipped inside installed
wheels (never downloaded): statsmodels' and arch's datasets and river's bundled files (the
benchmark-only ``bench`` group of requirements.lock; ``make bench`` installs it).

Each loader returns the whole series, in time order, as float64[T] without missing values; the
benchmark takes the last part of it (``bench_accuracy.py`` states the protocol). ``period`` is
the series' known seasonal period in ticks (1: none), given to every seasonal model.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np


@attrs.frozen
class Series:
    """One benchmark series.

    Attributes:
        name: short identifier (the ``--series`` option).
        category: what kind of series (price, return, rate, spread, macro, ...).
        description: what the values are, with units and sampling.
        period: known seasonal period in ticks (1 when the series has none).
        source: where the data comes from and the package that ships it.
        licence: the terms as the shipping package states them.
        load: returns float64[T], finite, in time order.
    """

    name: str
    category: str
    description: str
    period: int
    source: str
    licence: str
    load: Callable[[], np.ndarray] = attrs.field(repr=False)


def _finite(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


# --- arch (arch.data): Yahoo! Finance and FRED extracts -------------------------------------------

def _sp500_close() -> np.ndarray:
    from arch.data import sp500
    return _finite(sp500.load()["Adj Close"])


def _sp500_returns() -> np.ndarray:
    return 100.0 * np.diff(np.log(_sp500_close()))


def _vix() -> np.ndarray:
    from arch.data import vix
    return _finite(vix.load()["vix"])


def _wti() -> np.ndarray:
    from arch.data import wti
    return _finite(wti.load()["DCOILWTICO"])


def _aaa() -> np.ndarray:
    from arch.data import default
    return _finite(default.load()["AAA"])


def _baa_aaa() -> np.ndarray:
    from arch.data import default
    frame = default.load()
    return _finite(frame["BAA"] - frame["AAA"])


def _core_cpi_inflation() -> np.ndarray:
    from arch.data import core_cpi
    return 1200.0 * np.diff(np.log(_finite(core_cpi.load()["CPILFESL"])))


def _market_excess_return() -> np.ndarray:
    from arch.data import frenchdata
    return _finite(frenchdata.load()["Mkt-RF"])


# --- statsmodels (statsmodels.datasets) ----------------------------------------------------------

def _unemployment() -> np.ndarray:
    from statsmodels.datasets import macrodata
    return _finite(macrodata.load_pandas().data["unemp"])


def _sunspots() -> np.ndarray:
    from statsmodels.datasets import sunspots
    return _finite(sunspots.load_pandas().data["SUNACTIVITY"])


def _co2_monthly() -> np.ndarray:
    """Monthly means of the weekly record; the few months without any week are interpolated
    linearly in time (the weekly gaps are otherwise left out of the means)."""
    from statsmodels.datasets import co2
    weekly = co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate(method="linear")
    return _finite(monthly)


def _elnino() -> np.ndarray:
    """Row per year, one column per month: read row by row into one monthly series."""
    from statsmodels.datasets import elnino
    frame = elnino.load_pandas().data
    return _finite(frame.drop(columns=["YEAR"]).to_numpy().ravel())


# --- river (river.datasets, files inside the wheel) ----------------------------------------------

def _river(dataset: str) -> np.ndarray:
    from river import datasets
    return _finite([target for _, target in getattr(datasets, dataset)()])


#: Hours of the water-flow record kept: its last anomalous segment (a drop to a quarter of the
#: flow and the recovery, hours 871–889) then falls inside the benchmark's evaluation window of
#: the last 300 points; the 268 calm hours after it are left out.
WATER_FLOW_HOURS = 1000


def _water_flow() -> np.ndarray:
    return _river("WaterFlow")[:WATER_FLOW_HOURS]


SERIES: tuple[Series, ...] = (
    Series("sp500", "price", "S&P 500 index, adjusted daily close, 1999–2018", 1,
           "Yahoo! Finance extract shipped with arch (arch.data.sp500)",
           "as distributed with arch (NCSA licence for the package; data terms of the original source)",
           _sp500_close),
    Series("sp500_ret", "return", "S&P 500 daily log return (%), 1999–2018", 1,
           "derived from arch.data.sp500 (Yahoo! Finance)",
           "as distributed with arch (NCSA licence for the package; data terms of the original source)",
           _sp500_returns),
    Series("vix", "volatility index", "CBOE VIX, daily close, 2014–2019", 1,
           "FRED series VIXCLS shipped with arch (arch.data.vix)",
           "as distributed with arch; FRED terms of use (VIX © Cboe)", _vix),
    Series("wti", "price", "WTI crude oil spot price, daily (USD/bbl), 1986–2019", 1,
           "FRED series DCOILWTICO shipped with arch (arch.data.wti)",
           "as distributed with arch; FRED terms of use (public domain, U.S. EIA)", _wti),
    Series("aaa", "rate", "Moody's Aaa corporate bond yield, monthly (%), 1919–2018", 1,
           "FRED series AAA shipped with arch (arch.data.default)",
           "as distributed with arch; FRED terms of use (© Moody's, used with permission)", _aaa),
    Series("baa_aaa", "spread", "Moody's Baa − Aaa corporate yield spread, monthly (pp), 1919–2018", 1,
           "FRED series BAA and AAA shipped with arch (arch.data.default)",
           "as distributed with arch; FRED terms of use (© Moody's, used with permission)", _baa_aaa),
    Series("core_cpi", "macro", "US core CPI inflation, month on month, annualised (%), 1957–2018", 1,
           "derived from FRED series CPILFESL (seasonally adjusted) shipped with arch (arch.data.core_cpi)",
           "as distributed with arch; FRED terms of use (public domain, U.S. BLS)", _core_cpi_inflation),
    Series("unemp", "macro", "US unemployment rate, quarterly (%), 1959–2009", 1,
           "statsmodels.datasets.macrodata (FRED; unemployment from the U.S. BLS)",
           "public domain (as statsmodels states)", _unemployment),
    Series("mkt_rf", "return", "US market excess return, monthly (%), 1926–2018", 1,
           "Kenneth R. French data library, shipped with arch (arch.data.frenchdata)",
           "as distributed with arch; terms of the Kenneth R. French data library", _market_excess_return),
    Series("trump_approval", "poll", "Trump approval rating, FiveThirtyEight model, daily (%), 2017–2019", 1,
           "FiveThirtyEight, shipped with river (river.datasets.TrumpApproval)",
           "as distributed with river (BSD-3-Clause for the package; FiveThirtyEight data under CC BY 4.0)",
           lambda: _river("TrumpApproval")),
    Series("sunspots", "physical cycle", "Yearly sunspot number, 1700–2008 (cycle of about 11 years)", 11,
           "statsmodels.datasets.sunspots (NOAA National Geophysical Data Center)",
           "public domain (as statsmodels states)", _sunspots),
    Series("water_flow", "flow (spiky)", "Water flow through a pipeline branch, hourly (l/s), "
           "March–May 2022, first 1,000 hours, with anomalous drops and a pumping peak", 1,
           "Tecnojest s.r.l., shipped with river (river.datasets.WaterFlow)",
           "as distributed with river (BSD-3-Clause for the package; data donated by Tecnojest s.r.l.)",
           _water_flow),
    Series("airline", "seasonal", "International airline passengers, monthly (thousands), 1949–1960", 12,
           "Box & Jenkins (1976), series G, shipped with river (river.datasets.AirlinePassengers)",
           "as distributed with river (BSD-3-Clause for the package); a classic public dataset",
           lambda: _river("AirlinePassengers")),
    Series("co2_monthly", "seasonal", "Mauna Loa CO₂, monthly mean of the weekly record (ppmv), 1958–2001", 12,
           "Keeling & Whorf (2004), CDIAC; statsmodels.datasets.co2",
           "public domain (as statsmodels states)", _co2_monthly),
    Series("elnino", "seasonal", "Sea surface temperature, Niño 1+2 region, monthly (°C), 1950–2010", 12,
           "NOAA NWS Climate Prediction Center, ERSST.V3B; statsmodels.datasets.elnino",
           "public domain (as statsmodels states)", _elnino),
)

BY_NAME: dict[str, Series] = {series.name: series for series in SERIES}
