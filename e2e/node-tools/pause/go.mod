module parapet.dev/e2e/node-tools/pause

go 1.24
