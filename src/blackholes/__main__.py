from blackholes.cli import main

if __name__ == "__main__":  # a spawned pool worker imports this module too: it must not run the CLI
    raise SystemExit(main())
