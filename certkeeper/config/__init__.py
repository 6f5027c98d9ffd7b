"""The configuration file: TOML in, frozen types out, every mistake located.

:mod:`.load` holds the types and the parser, :mod:`.table` the located getters of one TOML table, :mod:`.mtasts`
the ``[mta_sts.<domain>]`` tables.
"""

from certkeeper.config.load import (
    CONFIG_ENV as CONFIG_ENV,
)
from certkeeper.config.load import (
    COPY_TARGETS as COPY_TARGETS,
)
from certkeeper.config.load import (
    DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH,
)
from certkeeper.config.load import (
    AcmeIssuerConfig as AcmeIssuerConfig,
)
from certkeeper.config.load import (
    AlertsConfig as AlertsConfig,
)
from certkeeper.config.load import (
    CaIssuerConfig as CaIssuerConfig,
)
from certkeeper.config.load import (
    CertificateConfig as CertificateConfig,
)
from certkeeper.config.load import (
    Challenge as Challenge,
)
from certkeeper.config.load import (
    Config as Config,
)
from certkeeper.config.load import (
    CopyTarget as CopyTarget,
)
from certkeeper.config.load import (
    DaneConfig as DaneConfig,
)
from certkeeper.config.load import (
    IssuerConfig as IssuerConfig,
)
from certkeeper.config.load import (
    Settings as Settings,
)
from certkeeper.config.load import (
    SmtpSecurity as SmtpSecurity,
)
from certkeeper.config.load import (
    WatchConfig as WatchConfig,
)
from certkeeper.config.load import (
    config_path as config_path,
)
from certkeeper.config.load import (
    load_config as load_config,
)
from certkeeper.config.load import (
    parse_config as parse_config,
)
from certkeeper.config.mtasts import (
    MtaStsConfig as MtaStsConfig,
)
from certkeeper.config.tlsrpt import (
    ImapMailbox as ImapMailbox,
)
from certkeeper.config.tlsrpt import (
    TlsrptConfig as TlsrptConfig,
)
from certkeeper.config.tlsrpt import (
    parse_imap_url as parse_imap_url,
)
