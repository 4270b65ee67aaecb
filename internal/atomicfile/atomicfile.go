// Package atomicfile writes files so that a crash leaves each one absent
// or whole, never empty or torn: a temporary file beside it is filled,
// synced and renamed over it, and the directory is synced so the rename
// lasts.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write writes path with what fill writes. On an error path is left as it
// was and the temporary file is removed.
func Write(path string, fill func(w io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after the rename: nothing
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncDir(filepath.Dir(path))
	}
	return err
}

// SyncDir makes a rename in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
