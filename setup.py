"""setup.py that reads settings.ini, as nbdev 2's project template does (nbdev_new needs GitHub, out of reach here)."""
from configparser import ConfigParser
import setuptools, shlex

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email'.split()
missing = [o for o in expected if o not in cfg]
if missing: raise ValueError(f"settings.ini is missing the keys {missing}")

setup_cfg = {o: cfg[o] for o in 'version description keywords author author_email'.split()}
# SPDX license expressions (PEP 639): setuptools deprecates the License :: classifiers
licenses = {'apache2': 'Apache-2.0'}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
extras = {k: shlex.split(cfg.get(f'{k}_requirements', '')) for k in ('export', 'faiss')}
lic = licenses.get(cfg['license'].lower(), cfg['license'])
min_python = cfg['min_python']
min_idx = py_versions.index(min_python)
console_scripts = cfg.get('console_scripts', '').split()

setuptools.setup(
    name=cfg['lib_name'],
    license_expression=lic,
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[min_idx:]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['reid_nb', 'reid_nb.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements + extras['export'] + extras['faiss'], **extras},   # the tests use both extras
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']},
    **setup_cfg)
