"""The programs: one thin module per console script (`build_parser()` and `main(argv=None) -> int`
turning flags into keyword arguments for one job); `common` declares the shared flag groups and
`run` turns an expected error into a message and exit code 2."""
