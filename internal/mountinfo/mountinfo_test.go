package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:               `/plain`,
		`/a\040b`:              `/a b`,
		`/tab\011nl\012bs\134`: "/tab\tnl\nbs\\",
		`/trailing\04`:         `/trailing\04`,
		`/not\9octal`:          `/not\9octal`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
