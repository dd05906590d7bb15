// The admin page (being built).
