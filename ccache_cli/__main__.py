from ccache_cli.cli.app import main

main()
